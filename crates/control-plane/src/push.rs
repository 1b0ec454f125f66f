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
    /// The current config.
    config: Arc<Config>,
    /// Snapshots generated for `config`, per proxy class.
    memo: HashMap<ClassKey, Option<Arc<Snapshot>>>,
}

impl Pusher {
    /// A pusher writing into `cache`.
    pub fn new(cache: Arc<SnapshotCache>, opts: Options) -> Self {
        Self {
            cache,
            opts,
            proxies: HashMap::new(),
            config: Arc::new(Config::default()),
            memo: HashMap::new(),
        }
    }

    fn generate_for(
        cache: &SnapshotCache,
        opts: &Options,
        config: &Config,
        proxy: &Proxy,
        memo: &mut HashMap<ClassKey, Option<Arc<Snapshot>>>,
    ) {
        let snap = memo
            .entry(class_key(proxy))
            .or_insert_with(|| match generate(config, proxy, opts) {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    warn!(node = %proxy.id, error = %e, "cannot generate config; the proxy keeps its current config");
                    None
                }
            })
            .clone();
        if let Some(snap) = snap {
            cache.set(&proxy.id, snap);
        }
    }

    /// Makes `config` current and recomputes every connected proxy.
    pub fn push_all(&mut self, config: Arc<Config>) {
        let start = std::time::Instant::now();
        let mut memo = HashMap::new();
        for (proxy, _) in self.proxies.values() {
            Self::generate_for(&self.cache, &self.opts, &config, proxy, &mut memo);
        }
        self.memo = memo;
        self.config = config;
        info!(
            proxies = self.proxies.len(),
            classes = self.memo.len(),
            elapsed_ms = start.elapsed().as_millis() as u64,
            "config pushed"
        );
    }

    /// Handles one node event.
    pub fn on_event(&mut self, ev: NodeEvent) {
        match ev {
            NodeEvent::Connected { node, .. } => match Proxy::from_node(&node) {
                Ok(p) => {
                    debug!(node = %p.id, namespace = %p.namespace, "proxy connected");
                    let entry = self.proxies.entry(p.id.clone()).or_insert((p.clone(), 0));
                    entry.0 = p.clone();
                    entry.1 += 1;
                    Self::generate_for(&self.cache, &self.opts, &self.config, &p, &mut self.memo);
                }
                Err(e) => warn!(node = %node.id, error = %e, "cannot serve this proxy"),
            },
            NodeEvent::Disconnected { node_id, .. } => {
                if let Some(entry) = self.proxies.get_mut(&node_id) {
                    entry.1 = entry.1.saturating_sub(1);
                    if entry.1 == 0 {
                        self.proxies.remove(&node_id);
                        self.cache.remove_if_unused(&node_id);
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
        let initial = configs.borrow_and_update().clone();
        self.push_all(initial);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => return,
                },
                changed = configs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let config = configs.borrow_and_update().clone();
                    self.push_all(config);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::config_from_yaml;
    use crate::proxy::node;
    use wasmesh_xds::type_url;

    const GW: &str = "---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: a}\nspec:\n  selector: {istio: gw}\n  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]\n";

    fn plugin(ns: &str, name: &str, cfg: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: '2024-01-01T00:00:00Z'}}\nspec:\n  url: file:///x.wasm\n  pluginConfig: {{v: {cfg}}}\n{extra}"
        )
    }

    fn versions(cache: &SnapshotCache, id: &str) -> (String, String) {
        let s = cache.get(id).unwrap();
        (
            s.get(type_url::LISTENER).unwrap().version().to_string(),
            s.get(type_url::EXTENSION_CONFIG)
                .unwrap()
                .version()
                .to_string(),
        )
    }

    #[test]
    fn pushes_are_scoped_to_affected_proxies_and_types() {
        let (cache, _events) = SnapshotCache::new();
        let mut pusher = Pusher::new(cache.clone(), Options::default());
        let a = "router~10.0.0.1~gw.a~a.svc.cluster.local";
        let b = "router~10.0.0.2~gw.b~b.svc.cluster.local";
        let c1 = Arc::new(config_from_yaml(&[GW, &plugin("a", "p", "1", "")].concat()));
        pusher.push_all(c1);
        for id in [a, b] {
            let ns = if id == a { "a" } else { "b" };
            pusher.on_event(NodeEvent::Connected {
                stream: 1,
                node: Box::new(node(id, ns, &[("istio", "gw")])),
            });
        }
        let (la1, ea1) = versions(&cache, a);
        let b1 = cache.get(b).unwrap();

        // A plugin config change: ECDS only, for the proxy it selects.
        let c2 = config_from_yaml(&[GW, &plugin("a", "p", "2", "")].concat());
        pusher.push_all(Arc::new(c2));
        let (la2, ea2) = versions(&cache, a);
        assert_eq!(la1, la2, "LDS must not change on a plugin config edit");
        assert_ne!(ea1, ea2, "ECDS must change");
        assert!(Arc::ptr_eq(&b1, &cache.get(b).unwrap()) || *b1 == *cache.get(b).unwrap());
        assert_eq!(
            b1.changed_types(&cache.get(b).unwrap()),
            Vec::<String>::new(),
            "unaffected proxy gets nothing"
        );

        // A change in the order of plugins: LDS.
        let c3 = config_from_yaml(
            &[
                GW,
                &plugin("a", "p", "2", ""),
                &plugin("a", "q", "1", "  priority: 5\n"),
            ]
            .concat(),
        );
        pusher.push_all(Arc::new(c3));
        let (la3, _) = versions(&cache, a);
        assert_ne!(la2, la3);
        assert_eq!(
            b1.changed_types(&cache.get(b).unwrap()),
            Vec::<String>::new()
        );

        // Disconnect forgets the proxy.
        pusher.on_event(NodeEvent::Disconnected {
            stream: 1,
            node_id: b.into(),
        });
        assert!(cache.get(b).is_none());
    }
}
