//! A minimal ADS server (state of the world and delta) on `127.0.0.1`: serves fixed resources per type,
//! pushes when they change, records every request (ACKs and NACKs). Enough to drive an
//! xDS client or the agent in tests; it knows nothing of Istio.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Type URLs of the common xDS resources.
pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const ECDS: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
}

#[derive(Default)]
struct State {
    /// type URL → (version, [(name, resource)]).
    resources: HashMap<String, (u64, Vec<(String, Any)>)>,
    requests: Vec<DiscoveryRequest>,
    delta_requests: Vec<DeltaDiscoveryRequest>,
    nonce: u64,
}

#[derive(Clone)]
struct Service {
    state: Arc<Mutex<State>>,
    pushed: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
}

/// The running fake server.
pub struct FakeAds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    push: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeAds {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts on `addr` (e.g. the port of a previous instance, to simulate a restart).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let (push, pushed) = watch::channel(0u64);
        let (stop, stopped) = watch::channel(false);
        let svc = Service {
            state: state.clone(),
            pushed,
            stop: stopped.clone(),
        };
        let mut shutdown = stopped;
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = shutdown.wait_for(|s| *s).await;
                    },
                )
                .await;
        });
        Ok(Self {
            addr,
            state,
            push,
            stop,
            server,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the resources of `type_url` (new version) and pushes them to every stream.
    pub fn set(&self, type_url: &str, resources: Vec<(String, Any)>) {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let e = st
                .resources
                .entry(type_url.to_owned())
                .or_insert((0, vec![]));
            e.0 += 1;
            e.1 = resources;
        }
        self.push.send_modify(|v| *v += 1);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<DiscoveryRequest> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// Every delta request received so far, in order.
    pub fn delta_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delta_requests
            .clone()
    }

    /// Requests that carried an error (NACKs).
    pub fn nacks(&self) -> Vec<DiscoveryRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.error_detail.is_some())
            .collect()
    }

    /// Current version (as sent: `v<N>`) of `type_url`.
    pub fn version(&self, type_url: &str) -> String {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        format!("v{}", st.resources.get(type_url).map(|r| r.0).unwrap_or(0))
    }

    /// Stops the server and ends every open stream with UNAVAILABLE.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

impl Service {
    fn response_for(&self, type_url: &str, names: &[String]) -> Option<DiscoveryResponse> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (version, resources) = st.resources.get(type_url).cloned()?;
        st.nonce += 1;
        let resources = resources
            .into_iter()
            .filter(|(n, _)| names.is_empty() || names.contains(n))
            .map(|(_, r)| r)
            .collect();
        Some(DiscoveryResponse {
            version_info: format!("v{version}"),
            resources,
            type_url: type_url.to_owned(),
            nonce: format!("n{}", st.nonce),
            ..Default::default()
        })
    }

    fn delta_response_for(
        &self,
        type_url: &str,
        names: &[String],
    ) -> Option<DeltaDiscoveryResponse> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (version, resources) = st.resources.get(type_url).cloned()?;
        st.nonce += 1;
        let version = format!("v{version}");
        let resources = resources
            .into_iter()
            .filter(|(n, _)| names.is_empty() || names.contains(n))
            .map(|(name, r)| Resource {
                name,
                version: version.clone(),
                resource: Some(r),
                ..Default::default()
            })
            .collect();
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_owned(),
            nonce: format!("n{}", st.nonce),
            ..Default::default()
        })
    }

    fn version_of(&self, type_url: &str) -> Option<String> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.resources.get(type_url).map(|r| format!("v{}", r.0))
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let svc = self.clone();
        tokio::spawn(async move {
            // type URL → (subscribed names, last version sent on this stream).
            let mut subs: HashMap<String, (Vec<String>, String)> = HashMap::new();
            let mut pushed = svc.pushed.clone();
            let mut stop = svc.stop.clone();
            loop {
                tokio::select! {
                    req = requests.next() => {
                        let Some(Ok(req)) = req else { return };
                        svc.state.lock().unwrap_or_else(|e| e.into_inner()).requests.push(req.clone());
                        let sub = subs.entry(req.type_url.clone()).or_insert((vec![], String::new()));
                        let names_changed = sub.0 != req.resource_names;
                        sub.0 = req.resource_names.clone();
                        let current = svc.version_of(&req.type_url);
                        // Answer a new subscription, a subscription change, or a client
                        // that is behind (e.g. after a reconnect); not a plain ACK or NACK.
                        let behind = current.as_deref().is_some_and(|v| v != req.version_info && v != sub.1);
                        if req.error_detail.is_none()
                            && (req.response_nonce.is_empty() || names_changed || behind)
                            && let Some(resp) = svc.response_for(&req.type_url, &req.resource_names)
                        {
                            sub.1 = resp.version_info.clone();
                            if tx.send(Ok(resp)).await.is_err() { return; }
                        }
                    }
                    changed = pushed.changed() => {
                        if changed.is_err() { return; }
                        for (t, (names, sent)) in subs.iter_mut() {
                            if svc.version_of(t).is_some_and(|v| &v != sent)
                                && let Some(resp) = svc.response_for(t, names)
                            {
                                *sent = resp.version_info.clone();
                                if tx.send(Ok(resp)).await.is_err() { return; }
                            }
                        }
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("fake ADS server shutting down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let svc = self.clone();
        tokio::spawn(async move {
            // type URL → (subscribed names, empty = wildcard; version last sent).
            let mut subs: HashMap<String, (Vec<String>, String)> = HashMap::new();
            let mut pushed = svc.pushed.clone();
            let mut stop = svc.stop.clone();
            loop {
                tokio::select! {
                    req = requests.next() => {
                        let Some(Ok(req)) = req else { return };
                        svc.state.lock().unwrap_or_else(|e| e.into_inner()).delta_requests.push(req.clone());
                        let sub = subs.entry(req.type_url.clone()).or_insert((vec![], String::new()));
                        sub.0.retain(|n| !req.resource_names_unsubscribe.contains(n));
                        sub.0.extend(req.resource_names_subscribe.iter().filter(|n| *n != "*").cloned());
                        let initial = req.response_nonce.is_empty();
                        if req.error_detail.is_none()
                            && (initial || !req.resource_names_subscribe.is_empty())
                            && let Some(resp) = svc.delta_response_for(&req.type_url, &sub.0)
                        {
                            sub.1 = resp.system_version_info.clone();
                            if tx.send(Ok(resp)).await.is_err() { return; }
                        }
                    }
                    changed = pushed.changed() => {
                        if changed.is_err() { return; }
                        for (t, (names, sent)) in subs.iter_mut() {
                            if svc.version_of(t).is_some_and(|v| &v != sent)
                                && let Some(resp) = svc.delta_response_for(t, names)
                            {
                                *sent = resp.system_version_info.clone();
                                if tx.send(Ok(resp)).await.is_err() { return; }
                            }
                        }
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("fake ADS server shutting down"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
