//! The ADS proxy: an `AggregatedDiscoveryService` server facing the proxy and a client to the
//! control plane per proxy stream, forwarding both ways and intercepting ECDS responses.
//!
//! When the control plane goes away the proxy's stream stays open (state of the world and
//! delta): the agent reconnects with backoff and replays the proxy's last subscription per type
//! with the versions the proxy holds, so the proxy keeps its config and never notices.

mod delta;
mod ecds;
mod sotw;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::convert::Converter;

/// Largest xDS message accepted either way (ECDS with many plugins can be large).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// Nonces of responses the agent makes up itself (background retry) start with this.
pub const AGENT_NONCE_PREFIX: &str = "wasmesh-agent-";

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay; each failure doubles the delay up to this.
    pub max: Duration,
}

impl Backoff {
    pub(crate) fn next(&self, current: Duration) -> Duration {
        (current * 2).min(self.max)
    }
}

/// Settings of the ADS proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Control plane address, `http://host:port`.
    pub upstream: String,
    /// Reconnection to the control plane.
    pub reconnect: Backoff,
    /// Background retry of failed module fetches.
    pub fetch_retry: Backoff,
}

impl ProxyOptions {
    /// Defaults for `upstream`: reconnect 100 ms .. 15 s, fetch retry 1 s .. 60 s.
    pub fn new(upstream: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            reconnect: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(15),
            },
            fetch_retry: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
        }
    }
}

/// Errors building the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid control plane address {addr}: {reason}")]
    Upstream { addr: String, reason: String },
}

pub(crate) struct ProxyInner {
    pub(crate) endpoint: Endpoint,
    pub(crate) upstream: String,
    pub(crate) converter: Converter,
    pub(crate) opts: ProxyOptions,
    nonce: AtomicU64,
}

impl ProxyInner {
    pub(crate) fn agent_nonce(&self) -> String {
        format!(
            "{AGENT_NONCE_PREFIX}{}",
            self.nonce.fetch_add(1, Ordering::Relaxed)
        )
    }

    pub(crate) async fn client(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<Channel>, tonic::transport::Error> {
        let channel = self.endpoint.connect().await?;
        Ok(AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }
}

/// The ADS proxy service. Cheap to clone.
#[derive(Clone)]
pub struct AdsProxy {
    inner: Arc<ProxyInner>,
}

impl std::fmt::Debug for AdsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsProxy")
            .field("upstream", &self.inner.upstream)
            .finish()
    }
}

impl AdsProxy {
    /// A proxy to `opts.upstream` converting ECDS with `converter`.
    pub fn new(opts: ProxyOptions, converter: Converter) -> Result<Self, ProxyError> {
        let addr = if opts.upstream.contains("://") {
            opts.upstream.clone()
        } else {
            format!("http://{}", opts.upstream)
        };
        let endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|e| ProxyError::Upstream {
                addr: addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30));
        Ok(Self {
            inner: Arc::new(ProxyInner {
                endpoint,
                upstream: addr,
                converter,
                opts,
                nonce: AtomicU64::new(0),
            }),
        })
    }

    /// The tonic service to mount.
    pub fn into_service(
        self,
    ) -> envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer<Self>
    {
        envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsProxy {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(sotw::Session::new(self.inner.clone(), tx).run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(delta::Session::new(self.inner.clone(), tx).run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
