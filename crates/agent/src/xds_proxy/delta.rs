//! Delta (incremental) ADS session: one per proxy stream. On a control plane failure the
//! proxy stream is closed with UNAVAILABLE; the proxy reconnects with the versions it holds.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};
use tracing::{debug, error, info, warn};

use super::ecds::{Push, Retries, Wanted};
use super::{AGENT_NONCE_PREFIX, ProxyInner};
use crate::convert::{Converted, ECDS_TYPE_URL};

type Down = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

pub(crate) struct Session {
    inner: Arc<ProxyInner>,
    down: Down,
}

/// What to send upstream for a proxy request, if anything.
fn filter_request(mut req: DeltaDiscoveryRequest) -> Option<DeltaDiscoveryRequest> {
    if !req.response_nonce.starts_with(AGENT_NONCE_PREFIX) {
        return Some(req);
    }
    if let Some(e) = &req.error_detail {
        warn!(type_url = %req.type_url, error = %e.message, "proxy rejected the config the agent pushed after a background retry");
        return None;
    }
    if req.resource_names_subscribe.is_empty() && req.resource_names_unsubscribe.is_empty() {
        return None;
    }
    req.response_nonce.clear();
    Some(req)
}

impl Session {
    pub(crate) fn new(inner: Arc<ProxyInner>, down: Down) -> Self {
        Self { inner, down }
    }

    pub(crate) async fn run(self, mut downstream: Streaming<DeltaDiscoveryRequest>) {
        let backoff = self.inner.opts.reconnect;
        let mut delay = backoff.initial;
        let (up_tx, up_rx) = mpsc::unbounded_channel();
        // Connect with backoff, queueing the proxy's requests meanwhile.
        let mut client = loop {
            let connect = self.inner.client();
            tokio::pin!(connect);
            let r = loop {
                tokio::select! {
                    c = &mut connect => break c,
                    req = downstream.next() => match req {
                        Some(Ok(req)) => if let Some(r) = filter_request(req) { let _ = up_tx.send(r); },
                        _ => return,
                    },
                }
            };
            match r {
                Ok(c) => break c,
                Err(e) => {
                    warn!(upstream = %self.inner.upstream, error = %e, retry_in = ?delay, "cannot connect to the control plane");
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            req = downstream.next() => match req {
                                Some(Ok(req)) => if let Some(r) = filter_request(req) { let _ = up_tx.send(r); },
                                _ => return,
                            },
                        }
                    }
                    delay = backoff.next(delay);
                }
            }
        };
        let call = client.delta_aggregated_resources(UnboundedReceiverStream::new(up_rx));
        tokio::pin!(call);
        let upstream = loop {
            tokio::select! {
                r = &mut call => break r,
                req = downstream.next() => match req {
                    Some(Ok(req)) => if let Some(r) = filter_request(req) { let _ = up_tx.send(r); },
                    _ => return,
                },
            }
        };
        let mut upstream = match upstream {
            Ok(r) => r.into_inner(),
            Err(e) => {
                warn!(upstream = %self.inner.upstream, error = %e, "control plane refused the delta ADS stream");
                let _ = self
                    .down
                    .send(Err(Status::unavailable(format!(
                        "control plane refused the stream: {}",
                        e.message()
                    ))))
                    .await;
                return;
            }
        };
        info!(upstream = %self.inner.upstream, "delta ADS stream to the control plane open");
        let (ecds_tx, ecds_rx) = mpsc::channel::<DeltaDiscoveryResponse>(16);
        let (nack_tx, mut nack_rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        let worker = tokio::spawn(ecds_worker(
            self.inner.clone(),
            self.down.clone(),
            ecds_rx,
            nack_tx,
        ));
        loop {
            tokio::select! {
                req = downstream.next() => match req {
                    Some(Ok(req)) => if let Some(r) = filter_request(req) { let _ = up_tx.send(r); },
                    _ => break,
                },
                resp = upstream.message() => match resp {
                    Ok(Some(resp)) => {
                        let sent = if resp.type_url == ECDS_TYPE_URL {
                            ecds_tx.send(resp).await.is_ok()
                        } else {
                            self.down.send(Ok(resp)).await.is_ok()
                        };
                        if !sent { break; }
                    }
                    other => {
                        let reason = match other { Err(e) => e.to_string(), _ => "stream closed".into() };
                        warn!(upstream = %self.inner.upstream, %reason, "delta ADS stream to the control plane ended; closing the proxy stream so it reconnects");
                        let _ = self.down.send(Err(Status::unavailable(format!("control plane stream ended: {reason}")))).await;
                        break;
                    }
                },
                nack = nack_rx.recv() => if let Some(n) = nack { let _ = up_tx.send(n); },
                _ = self.down.closed() => break,
            }
        }
        worker.abort();
        debug!("proxy delta ADS stream ended");
    }
}

async fn ecds_worker(
    inner: Arc<ProxyInner>,
    down: Down,
    mut rx: mpsc::Receiver<DeltaDiscoveryResponse>,
    nack_tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
) {
    let mut retries = Retries::default();
    let versions = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        String,
    >::new()));
    let push: Push = {
        let (inner, down, versions) = (inner.clone(), down.clone(), versions.clone());
        Arc::new(move |c: Converted| {
            let (inner, down, versions) = (inner.clone(), down.clone(), versions.clone());
            Box::pin(async move {
                let version = versions
                    .lock()
                    .ok()
                    .and_then(|v| v.get(&c.name).cloned())
                    .unwrap_or_default();
                let resp = DeltaDiscoveryResponse {
                    resources: vec![Resource {
                        name: c.name.clone(),
                        version: format!("{version}+agent-retry"),
                        resource: Some(c.resource),
                        ..Default::default()
                    }],
                    type_url: ECDS_TYPE_URL.into(),
                    nonce: inner.agent_nonce(),
                    ..Default::default()
                };
                let _ = down.send(Ok(resp)).await;
            })
        })
    };
    // Delta unsubscriptions are not tracked: a retry lives as long as the stream.
    let wanted: Wanted = Arc::new(|_: &str| true);
    while let Some(mut resp) = rx.recv().await {
        let originals: Vec<Any> = resp
            .resources
            .iter()
            .map(|r| r.resource.clone().unwrap_or_default())
            .collect();
        if let Ok(mut v) = versions.lock() {
            for r in &resp.resources {
                v.insert(r.name.clone(), r.version.clone());
            }
        }
        match inner.converter.convert_all(&originals).await {
            Ok(converted) => {
                retries.update(&inner, &converted, &originals, &push, &wanted);
                for (r, c) in resp.resources.iter_mut().zip(converted) {
                    if r.resource.is_some() {
                        r.resource = Some(c.resource);
                    }
                }
                if down.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                error!(nonce = %resp.nonce, error = %e, "malformed delta ECDS response; NACKing it to the control plane");
                let _ = nack_tx.send(DeltaDiscoveryRequest {
                    type_url: ECDS_TYPE_URL.into(),
                    response_nonce: resp.nonce,
                    error_detail: Some(RpcStatus {
                        code: tonic::Code::Internal as i32,
                        message: e.to_string(),
                        details: vec![],
                    }),
                    ..Default::default()
                });
            }
        }
    }
}
