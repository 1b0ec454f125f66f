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

use super::ecds::{Push, Retries, Wanted};
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
    let wanted: Wanted = {
        let shared = shared.clone();
        Arc::new(move |name: &str| {
            let sh = lock(&shared);
            // No ECDS subscription recorded, or a wildcard one: keep going.
            sh.subs
                .iter()
                .find(|r| r.type_url == ECDS_TYPE_URL)
                .is_none_or(|r| {
                    r.resource_names.is_empty() || r.resource_names.iter().any(|n| n == name)
                })
        })
    };
    while let Some(mut resp) = rx.recv().await {
        match inner.converter.convert_all(&resp.resources).await {
            Ok(converted) => {
                retries.update(&inner, &converted, &resp.resources, &push, &wanted);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheOptions, ModuleCache};
    use crate::convert::Converter;
    use crate::metrics::Metrics;
    use crate::xds_proxy::{AdsProxy, ProxyOptions};

    const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

    fn session(dir: &std::path::Path) -> Session {
        let cache =
            ModuleCache::open(CacheOptions::new(dir), Arc::new(Metrics::default())).unwrap();
        let proxy = AdsProxy::new(ProxyOptions::new("127.0.0.1:1"), Converter::new(cache)).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        Session::new(proxy.inner, tx)
    }

    fn req(type_url: &str, version: &str, nonce: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn replay_carries_the_node_and_the_latest_subscription_per_type() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path());
        let mut first = req(LDS, "", "", &[]);
        first.node = Some(Node {
            id: "sidecar~1~a.b~b.svc.cluster.local".into(),
            ..Default::default()
        });
        assert!(s.on_request(first).is_some());
        s.on_request(req(ECDS_TYPE_URL, "", "", &["a"]));
        s.on_request(req(LDS, "v1", "n1", &[]));
        s.on_request(req(ECDS_TYPE_URL, "v2", "n2", &["a", "b"]));
        let replay = s.replay();
        assert_eq!(replay.len(), 2);
        assert_eq!(
            replay[0].node.as_ref().map(|n| n.id.as_str()),
            Some("sidecar~1~a.b~b.svc.cluster.local")
        );
        assert_eq!(
            (replay[0].type_url.as_str(), replay[0].version_info.as_str()),
            (LDS, "v1")
        );
        assert_eq!(
            replay[1].resource_names,
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(
            replay
                .iter()
                .all(|r| r.response_nonce.is_empty() && r.error_detail.is_none())
        );
        assert!(replay[1].node.is_none());
    }

    #[tokio::test]
    async fn answers_to_agent_responses_are_dropped_or_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path());
        s.on_request(req(ECDS_TYPE_URL, "", "", &["a"]));
        lock(&s.shared)
            .upstream
            .insert(ECDS_TYPE_URL.into(), ("v3".into(), "n3".into()));
        s.on_request(req(ECDS_TYPE_URL, "v3", "n3", &["a"]));
        let agent_nonce = format!("{AGENT_NONCE_PREFIX}7");
        // A plain ACK of the agent's own response: not for the control plane.
        assert!(
            s.on_request(req(ECDS_TYPE_URL, "v3+agent-retry", &agent_nonce, &["a"]))
                .is_none()
        );
        // A NACK of it neither.
        let mut nack = req(ECDS_TYPE_URL, "v3", &agent_nonce, &["a"]);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "bad".into(),
            details: vec![],
        });
        assert!(s.on_request(nack).is_none());
        // A subscription change: forwarded as an ACK of the control plane's last response.
        let fwd = s
            .on_request(req(
                ECDS_TYPE_URL,
                "v3+agent-retry",
                &agent_nonce,
                &["a", "b"],
            ))
            .unwrap();
        assert_eq!(
            (fwd.version_info.as_str(), fwd.response_nonce.as_str()),
            ("v3", "n3")
        );
        assert_eq!(fwd.resource_names.len(), 2);
    }
}
