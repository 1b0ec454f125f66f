//! Incremental (delta) ADS: per-resource versions, subscribe/unsubscribe, removals. Serves the
//! same per-node [`Snapshot`]s as the state-of-the-world stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use crate::server::{NONCE, NodeEvent, STREAM_ID, SnapshotCache};
use crate::snapshot::{Snapshot, type_url};

#[derive(Debug, Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds, as far as we know: name → version.
    sent: BTreeMap<String, String>,
    nonce: String,
    /// Version (system) of the last response, for ACK/NACK reporting.
    sent_version: String,
    /// Respond even without changes (first request of a type).
    force: bool,
}

pub(crate) struct DeltaStream {
    pub(crate) cache: Arc<SnapshotCache>,
    pub(crate) tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    pub(crate) node_id: String,
    subs: HashMap<String, DeltaSub>,
}

impl DeltaStream {
    pub(crate) fn new(
        cache: Arc<SnapshotCache>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Self {
        Self {
            cache,
            tx,
            node_id: String::new(),
            subs: HashMap::new(),
        }
    }

    pub(crate) async fn run(
        &mut self,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<(), Status> {
        let Some(first) = inbound.message().await? else {
            return Ok(());
        };
        let node = first.node.clone().ok_or_else(|| {
            Status::invalid_argument("the first DeltaDiscoveryRequest must carry a node")
        })?;
        self.node_id = node.id.clone();
        let stream_id = STREAM_ID.fetch_add(1, Ordering::Relaxed);
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
                        break Err(Status::unavailable("node removed from the control plane"));
                    }
                }
            }
        };
        // Release our view of the slot first, so the owner may drop an unused slot on this event.
        drop(snap_rx);
        self.cache.emit(NodeEvent::Disconnected {
            stream: stream_id,
            node_id: self.node_id.clone(),
        });
        result
    }

    fn on_request(&mut self, req: DeltaDiscoveryRequest) {
        let first_of_type = !self.subs.contains_key(&req.type_url);
        let sub = self.subs.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce == sub.nonce {
            match req.error_detail {
                Some(err) => {
                    warn!(node = %self.node_id, type_url = %req.type_url, rejected_version = %sub.sent_version,
                        error = %err.message, "proxy rejected config (delta NACK); it keeps its previous config");
                    self.cache.emit(NodeEvent::Nack {
                        node_id: self.node_id.clone(),
                        type_url: req.type_url.clone(),
                        version: sub.sent_version.clone(),
                        message: err.message,
                    });
                }
                None => self.cache.emit(NodeEvent::Ack {
                    node_id: self.node_id.clone(),
                    type_url: req.type_url.clone(),
                    version: sub.sent_version.clone(),
                }),
            }
        }
        if first_of_type {
            sub.force = true;
            sub.sent = req.initial_resource_versions.into_iter().collect();
            if type_url::is_wildcard_type(&req.type_url) && req.resource_names_subscribe.is_empty()
            {
                sub.wildcard = true;
            }
        }
        for n in req.resource_names_subscribe {
            if n == "*" {
                sub.wildcard = true;
            } else {
                // A (re-)subscription must be answered even if the client thinks it has it.
                sub.sent.remove(&n);
                sub.names.insert(n);
                sub.force = true;
            }
        }
        for n in req.resource_names_unsubscribe {
            if n == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&n);
                sub.sent.remove(&n);
            }
        }
    }

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
            let wanted: Vec<&String> = if sub.wildcard {
                res.items()
                    .keys()
                    .chain(sub.names.iter())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            } else {
                sub.names.iter().collect()
            };
            let mut resources = Vec::new();
            let mut removed = Vec::new();
            for name in wanted {
                match (res.get(name), res.item_version(name)) {
                    (Some(any), Some(v)) => {
                        if sub.sent.get(name).map(String::as_str) != Some(v) {
                            resources.push(Resource {
                                name: name.clone(),
                                version: v.to_string(),
                                resource: Some(any.clone()),
                                ..Default::default()
                            });
                        }
                    }
                    _ => {
                        if sub.sent.contains_key(name) {
                            removed.push(name.clone());
                        }
                    }
                }
            }
            if sub.wildcard {
                for name in sub.sent.keys() {
                    if res.get(name).is_none() && !removed.contains(name) {
                        removed.push(name.clone());
                    }
                }
            }
            if resources.is_empty() && removed.is_empty() && !sub.force {
                continue;
            }
            sub.force = false;
            for r in &resources {
                sub.sent.insert(r.name.clone(), r.version.clone());
            }
            for n in &removed {
                sub.sent.remove(n);
            }
            let nonce = NONCE.fetch_add(1, Ordering::Relaxed).to_string();
            sub.nonce = nonce.clone();
            sub.sent_version = res.version().to_string();
            debug!(node = %self.node_id, type_url = %t, added = resources.len(), removed = removed.len(), "delta push");
            let resp = DeltaDiscoveryResponse {
                system_version_info: res.version().to_string(),
                resources,
                type_url: t.clone(),
                removed_resources: removed,
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
