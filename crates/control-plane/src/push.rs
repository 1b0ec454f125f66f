//! Push: keeps every connected proxy's snapshot equal to `generate(config, proxy)`.
//!
//! Snapshots are content-versioned per type, so a change reaches only the proxies whose
//! resources it changes, and only the types that changed (a plugin config edit is an ECDS-only
//! push; a change in the set or order of plugins is an LDS push). Proxies with the same
//! (kind, namespace, labels) share one generated snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use wasmesh_xds::{NodeEvent, Snapshot, SnapshotCache};

use crate::config::Config;
use crate::generate::{Options, generate};
use crate::proxy::{Proxy, ProxyKind};

type ClassKey = (ProxyKind, String, Vec<(String, String)>);

fn class_key(p: &Proxy) -> ClassKey {
    (
        p.kind,
        p.namespace.clone(),
        p.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// Drives a [`SnapshotCache`] from configs and node events.
#[derive(Debug)]
pub struct Pusher {
    cache: Arc<SnapshotCache>,
    opts: Options,
    proxies: HashMap<String, (Proxy, usize)>,
}

impl Pusher {
    /// A pusher writing into `cache`.
    pub fn new(cache: Arc<SnapshotCache>, opts: Options) -> Self {
        Self {
            cache,
            opts,
            proxies: HashMap::new(),
        }
    }

    fn generate_for(
        &self,
        config: &Config,
        proxy: &Proxy,
        memo: &mut HashMap<ClassKey, Option<Arc<Snapshot>>>,
    ) {
        let snap = memo
            .entry(class_key(proxy))
            .or_insert_with(|| match generate(config, proxy, &self.opts) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    warn!(node = %proxy.id, error = %e, "cannot generate config; the proxy keeps its current config");
                    None
                }
            })
            .clone();
        if let Some(snap) = snap {
            self.cache.set(&proxy.id, snap);
        }
    }

    /// Recomputes every connected proxy for `config`.
    pub fn push_all(&self, config: &Config) {
        let start = std::time::Instant::now();
        let mut memo = HashMap::new();
        for (proxy, _) in self.proxies.values() {
            self.generate_for(config, proxy, &mut memo);
        }
        info!(
            proxies = self.proxies.len(),
            classes = memo.len(),
            elapsed_ms = start.elapsed().as_millis() as u64,
            "config pushed"
        );
    }

    /// Handles one node event.
    pub fn on_event(&mut self, config: &Config, ev: NodeEvent) {
        match ev {
            NodeEvent::Connected { node, .. } => match Proxy::from_node(&node) {
                Ok(p) => {
                    debug!(node = %p.id, namespace = %p.namespace, "proxy connected");
                    let entry = self.proxies.entry(p.id.clone()).or_insert((p.clone(), 0));
                    entry.0 = p.clone();
                    entry.1 += 1;
                    self.generate_for(config, &p, &mut HashMap::new());
                }
                Err(e) => warn!(node = %node.id, error = %e, "cannot serve this proxy"),
            },
            NodeEvent::Disconnected { node_id, .. } => {
                if let Some(entry) = self.proxies.get_mut(&node_id) {
                    entry.1 = entry.1.saturating_sub(1);
                    if entry.1 == 0 {
                        self.proxies.remove(&node_id);
                        self.cache.remove(&node_id);
                    }
                }
            }
            NodeEvent::Ack { .. } | NodeEvent::Nack { .. } => {}
        }
    }

    /// Runs until both inputs close: node events and config updates.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<NodeEvent>,
        mut configs: watch::Receiver<Arc<Config>>,
    ) {
        let mut config = configs.borrow_and_update().clone();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(&config, ev),
                    None => return,
                },
                changed = configs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    config = configs.borrow_and_update().clone();
                    self.push_all(&config);
                }
            }
        }
    }
}
