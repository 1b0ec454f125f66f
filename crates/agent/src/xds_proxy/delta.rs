//! Delta (incremental) ADS session: one per proxy stream. When the control plane goes away the
//! proxy's stream stays open; the agent reconnects with backoff and replays, per type, the
//! proxy's subscriptions and the versions of the resources it holds
//! (`initial_resource_versions`), so the control plane sends only what changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
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

/// What the proxy subscribed to and holds, per type.
#[derive(Default)]
struct TypeState {
    names: BTreeSet<String>,
    /// Resource name → version the proxy was sent (the control plane's version).
    versions: HashMap<String, String>,
}

#[derive(Default)]
struct Shared {
    node: Option<Node>,
    /// Types in first-seen order.
    types: Vec<(String, TypeState)>,
}

impl Shared {
    fn state(&mut self, type_url: &str) -> &mut TypeState {
        let i = match self.types.iter().position(|(t, _)| t == type_url) {
            Some(i) => i,
            None => {
                self.types.push((type_url.to_owned(), TypeState::default()));
                self.types.len() - 1
            }
        };
        &mut self.types[i].1
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Session {
    inner: Arc<ProxyInner>,
    down: Down,
    shared: Arc<Mutex<Shared>>,
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
        Self {
            inner,
            down,
            shared: Arc::default(),
        }
    }

    /// Records a proxy request; returns what to send upstream, if anything.
    fn on_request(&self, req: DeltaDiscoveryRequest) -> Option<DeltaDiscoveryRequest> {
        {
            let mut sh = lock(&self.shared);
            if sh.node.is_none() {
                sh.node = req.node.clone();
            }
            let st = sh.state(&req.type_url);
            st.names
                .extend(req.resource_names_subscribe.iter().cloned());
            for n in &req.resource_names_unsubscribe {
                st.names.remove(n);
                st.versions.remove(n);
            }
            for (n, v) in &req.initial_resource_versions {
                st.versions.insert(n.clone(), v.clone());
            }
        }
        filter_request(req)
    }

    fn on_response(&self, resp: &DeltaDiscoveryResponse) {
        let mut sh = lock(&self.shared);
        let st = sh.state(&resp.type_url);
        for r in &resp.resources {
            st.versions.insert(r.name.clone(), r.version.clone());
        }
        for n in &resp.removed_resources {
            st.versions.remove(n);
        }
    }

    fn replay(&self) -> Vec<DeltaDiscoveryRequest> {
        let sh = lock(&self.shared);
        let mut out: Vec<DeltaDiscoveryRequest> = sh
            .types
            .iter()
            .map(|(t, st)| DeltaDiscoveryRequest {
                type_url: t.clone(),
                resource_names_subscribe: st.names.iter().cloned().collect(),
                initial_resource_versions: st.versions.clone(),
                ..Default::default()
            })
            .collect();
        if let Some(first) = out.first_mut() {
            first.node = sh.node.clone();
        }
        out
    }

    pub(crate) async fn run(self, mut downstream: Streaming<DeltaDiscoveryRequest>) {
        let (ecds_tx, ecds_rx) = mpsc::channel::<DeltaDiscoveryResponse>(16);
        let (nack_tx, mut nack_rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
        let worker = tokio::spawn(ecds_worker(
            self.inner.clone(),
            self.down.clone(),
            ecds_rx,
            nack_tx,
        ));
        let backoff = self.inner.opts.reconnect;
        let mut delay = backoff.initial;
        let mut first = true;
        'session: loop {
            if !first {
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
            let call = client.delta_aggregated_resources(UnboundedReceiverStream::new(up_rx));
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
                Ok(r) => r.into_inner(),
                Err(e) => {
                    warn!(upstream = %self.inner.upstream, error = %e, retry_in = ?delay, "control plane refused the delta ADS stream");
                    continue;
                }
            };
            info!(upstream = %self.inner.upstream, "delta ADS stream to the control plane open");
            loop {
                tokio::select! {
                    req = downstream.next() => match req {
                        Some(Ok(req)) => if let Some(r) = self.on_request(req) { let _ = up_tx.send(r); },
                        _ => break 'session,
                    },
                    resp = upstream.message() => match resp {
                        Ok(Some(resp)) => {
                            delay = backoff.initial;
                            self.on_response(&resp);
                            let sent = if resp.type_url == ECDS_TYPE_URL {
                                ecds_tx.send(resp).await.is_ok()
                            } else {
                                self.down.send(Ok(resp)).await.is_ok()
                            };
                            if !sent { break 'session; }
                        }
                        other => {
                            let reason = match other { Err(e) => e.to_string(), _ => "stream closed".into() };
                            warn!(upstream = %self.inner.upstream, %reason, retry_in = ?delay, "delta ADS stream to the control plane ended; reconnecting");
                            break;
                        }
                    },
                    nack = nack_rx.recv() => if let Some(n) = nack { let _ = up_tx.send(n); },
                    _ = self.down.closed() => break 'session,
                }
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
