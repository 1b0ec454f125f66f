//! State-of-the-world ADS session: one per proxy stream.

use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, Streaming};
use tracing::{debug, error, info, warn};

use super::ecds::{Push, Retries};
use super::{AGENT_NONCE_PREFIX, ProxyInner};
use crate::convert::{Converted, ECDS_TYPE_URL};

type Down = mpsc::Sender<Result<DiscoveryResponse, Status>>;

#[derive(Default)]
struct Shared {
    /// The proxy's last request per type (first-seen order), without nonce: what to replay.
    subs: Vec<DiscoveryRequest>,
    node: Option<Node>,
    /// Last (version, nonce) from the control plane per type.
    upstream: HashMap<String, (String, String)>,
}

pub(crate) struct Session {
    inner: Arc<ProxyInner>,
    down: Down,
    shared: Arc<Mutex<Shared>>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    pub(crate) fn new(inner: Arc<ProxyInner>, down: Down) -> Self {
        Self {
            inner,
            down,
            shared: Arc::default(),
        }
    }

    /// Records a proxy request; returns what to send upstream, if anything.
    fn on_request(&self, mut req: DiscoveryRequest) -> Option<DiscoveryRequest> {
        let mut sh = lock(&self.shared);
        if sh.node.is_none() {
            sh.node = req.node.clone();
        }
        let prev = sh.subs.iter().position(|r| r.type_url == req.type_url);
        if req.response_nonce.starts_with(AGENT_NONCE_PREFIX) {
            // The proxy answers a response the agent made up (background retry).
            if let Some(e) = &req.error_detail {
                warn!(type_url = %req.type_url, error = %e.message, "proxy rejected the config the agent pushed after a background retry");
                return None;
            }
            let prev = prev.map(|i| &sh.subs[i]);
            if prev.is_some_and(|p| p.resource_names == req.resource_names) {
                return None;
            }
            // A subscription change: tell the control plane, as an ACK of its last response.
            req.version_info = prev.map(|p| p.version_info.clone()).unwrap_or_default();
            req.response_nonce = sh
                .upstream
                .get(&req.type_url)
                .map(|u| u.1.clone())
                .unwrap_or_default();
        }
        let mut rec = req.clone();
        rec.node = None;
        rec.error_detail = None;
        rec.response_nonce.clear();
        match prev {
            Some(i) => sh.subs[i] = rec,
            None => sh.subs.push(rec),
        }
        Some(req)
    }

    fn replay(&self) -> Vec<DiscoveryRequest> {
        let sh = lock(&self.shared);
        let mut out = sh.subs.clone();
        if let Some(first) = out.first_mut() {
            first.node = sh.node.clone();
        }
        out
    }

    pub(crate) async fn run(self, mut downstream: Streaming<DiscoveryRequest>) {
        let (ecds_tx, ecds_rx) = mpsc::channel::<DiscoveryResponse>(16);
        let (nack_tx, mut nack_rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
        let worker = tokio::spawn(ecds_worker(
            self.inner.clone(),
            self.down.clone(),
            self.shared.clone(),
            ecds_rx,
            nack_tx,
        ));
        let backoff = self.inner.opts.reconnect;
        let mut delay = backoff.initial;
        let mut first = true;
        'session: loop {
            if !first {
                // Wait before reconnecting, still recording what the proxy sends.
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        req = downstream.next() => match req {
                            Some(Ok(req)) => { self.on_request(req); }
                            _ => break 'session,
                        },
                    }
                }
                delay = backoff.next(delay);
            }
            first = false;
            // Connect, recording proxy requests meanwhile.
            let connect = self.inner.client();
            tokio::pin!(connect);
            let client = loop {
                tokio::select! {
                    c = &mut connect => break c,
                    req = downstream.next() => match req {
                        Some(Ok(req)) => { self.on_request(req); }
                        _ => break 'session,
                    },
                }
            };
            let mut client = match client {
                Ok(c) => c,
                Err(e) => {
                    warn!(upstream = %self.inner.upstream, error = %e, retry_in = ?delay, "cannot connect to the control plane");
                    continue;
                }
            };
            let (up_tx, up_rx) = mpsc::unbounded_channel();
            for r in self.replay() {
                let _ = up_tx.send(r);
            }
            let call = client.stream_aggregated_resources(UnboundedReceiverStream::new(up_rx));
            tokio::pin!(call);
            let upstream = loop {
                tokio::select! {
                    r = &mut call => break r,
                    req = downstream.next() => match req {
                        Some(Ok(req)) => if let Some(r) = self.on_request(req) { let _ = up_tx.send(r); },
                        _ => break 'session,
                    },
                }
            };
            let mut upstream = match upstream {
                Ok(resp) => resp.into_inner(),
                Err(e) => {
                    warn!(upstream = %self.inner.upstream, error = %e, retry_in = ?delay, "control plane refused the ADS stream");
                    continue;
                }
            };
            info!(upstream = %self.inner.upstream, "ADS stream to the control plane open");
            loop {
                tokio::select! {
                    req = downstream.next() => match req {
                        Some(Ok(req)) => {
                            debug!(type_url = %req.type_url, nonce = %req.response_nonce, "proxy → control plane");
                            if let Some(r) = self.on_request(req) { let _ = up_tx.send(r); }
                        }
                        Some(Err(e)) => { debug!(error = %e, "proxy stream failed"); break 'session; }
                        None => break 'session,
                    },
                    resp = upstream.message() => match resp {
                        Ok(Some(resp)) => {
                            delay = backoff.initial;
                            debug!(type_url = %resp.type_url, version = %resp.version_info, nonce = %resp.nonce, "control plane → proxy");
                            lock(&self.shared).upstream.insert(resp.type_url.clone(), (resp.version_info.clone(), resp.nonce.clone()));
                            let sent = if resp.type_url == ECDS_TYPE_URL {
                                ecds_tx.send(resp).await.is_ok()
                            } else {
                                self.down.send(Ok(resp)).await.is_ok()
                            };
                            if !sent { break 'session; }
                        }
                        Ok(None) => { warn!(upstream = %self.inner.upstream, retry_in = ?delay, "control plane closed the ADS stream; reconnecting"); break; }
                        Err(e) => { warn!(upstream = %self.inner.upstream, error = %e, retry_in = ?delay, "ADS stream to the control plane failed; reconnecting"); break; }
                    },
                    nack = nack_rx.recv() => if let Some(n) = nack { let _ = up_tx.send(n); },
                    _ = self.down.closed() => break 'session,
                }
            }
        }
        worker.abort();
        debug!("proxy ADS stream ended");
    }
}

async fn ecds_worker(
    inner: Arc<ProxyInner>,
    down: Down,
    shared: Arc<Mutex<Shared>>,
    mut rx: mpsc::Receiver<DiscoveryResponse>,
    nack_tx: mpsc::UnboundedSender<DiscoveryRequest>,
) {
    let mut retries = Retries::default();
    let push: Push = {
        let (inner, down, shared) = (inner.clone(), down.clone(), shared.clone());
        Arc::new(move |c: Converted| {
            let (inner, down, shared) = (inner.clone(), down.clone(), shared.clone());
            Box::pin(async move {
                let version = lock(&shared)
                    .upstream
                    .get(ECDS_TYPE_URL)
                    .map(|u| u.0.clone())
                    .unwrap_or_default();
                let resp = DiscoveryResponse {
                    version_info: format!("{version}+agent-retry"),
                    resources: vec![c.resource],
                    type_url: ECDS_TYPE_URL.into(),
                    nonce: inner.agent_nonce(),
                    ..Default::default()
                };
                let _ = down.send(Ok(resp)).await;
            })
        })
    };
    while let Some(mut resp) = rx.recv().await {
        match inner.converter.convert_all(&resp.resources).await {
            Ok(converted) => {
                retries.update(&inner, &converted, &resp.resources, &push);
                resp.resources = converted.into_iter().map(|c| c.resource).collect();
                if down.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                error!(nonce = %resp.nonce, error = %e, "malformed ECDS response; NACKing it to the control plane");
                let prev = lock(&shared)
                    .subs
                    .iter()
                    .find(|r| r.type_url == ECDS_TYPE_URL)
                    .cloned()
                    .unwrap_or_default();
                let _ = nack_tx.send(DiscoveryRequest {
                    version_info: prev.version_info,
                    resource_names: prev.resource_names,
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
