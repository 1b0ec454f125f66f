//! Proxies as istiod sees them: node id `type~ip~pod.ns~ns.svc.cluster.local` and metadata
//! `NAMESPACE`, `LABELS`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

/// Errors reading a node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Node id is not `type~ip~id~domain`.
    #[error(
        "node id {0:?} is not of the form sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local"
    )]
    BadNodeId(String),
    /// Unknown proxy type.
    #[error("node id {0:?}: proxy type must be sidecar or router")]
    BadType(String),
}

/// Proxy type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    /// Sidecar.
    Sidecar,
    /// Gateway (`router`).
    Router,
}

/// A connected proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proxy {
    /// Node id.
    pub id: String,
    /// Type.
    pub kind: ProxyKind,
    /// Config namespace (metadata NAMESPACE, else the id's domain).
    pub namespace: String,
    /// Workload labels (metadata LABELS).
    pub labels: BTreeMap<String, String>,
}

/// Gateway API label naming a deployed gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

impl Proxy {
    /// Reads a proxy from an xDS node.
    pub fn from_node(node: &Node) -> Result<Self, ProxyError> {
        let parts: Vec<&str> = node.id.split('~').collect();
        if parts.len() != 4 {
            return Err(ProxyError::BadNodeId(node.id.clone()));
        }
        let kind = match parts[0] {
            "sidecar" => ProxyKind::Sidecar,
            "router" => ProxyKind::Router,
            _ => return Err(ProxyError::BadType(node.id.clone())),
        };
        let mut namespace = parts[3].split('.').next().unwrap_or_default().to_string();
        let mut labels = BTreeMap::new();
        if let Some(md) = &node.metadata {
            if let Some(Kind::StringValue(ns)) =
                md.fields.get("NAMESPACE").and_then(|v| v.kind.as_ref())
                && !ns.is_empty()
            {
                namespace = ns.clone();
            }
            if let Some(Kind::StructValue(l)) =
                md.fields.get("LABELS").and_then(|v| v.kind.as_ref())
            {
                for (k, v) in &l.fields {
                    if let Some(Kind::StringValue(s)) = &v.kind {
                        labels.insert(k.clone(), s.clone());
                    }
                }
            }
        }
        if namespace.is_empty() {
            return Err(ProxyError::BadNodeId(node.id.clone()));
        }
        Ok(Self {
            id: node.id.clone(),
            kind,
            namespace,
            labels,
        })
    }

    /// Whether every label of `selector` is on this proxy.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// Builds an xDS node for tests and simulated proxies.
pub fn node(id: &str, namespace: &str, labels: &[(&str, &str)]) -> Node {
    use envoy_types::pb::google::protobuf::{Struct, Value};
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut fields = std::collections::HashMap::new();
    fields.insert("NAMESPACE".to_string(), s(namespace));
    let l = labels.iter().map(|(k, v)| (k.to_string(), s(v))).collect();
    fields.insert(
        "LABELS".to_string(),
        Value {
            kind: Some(Kind::StructValue(Struct { fields: l })),
        },
    );
    Node {
        id: id.to_string(),
        cluster: "wasmesh".into(),
        metadata: Some(Struct { fields }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_node_ids() {
        let p = Proxy::from_node(&node(
            "sidecar~10.0.0.1~app.shop~shop.svc.cluster.local",
            "shop",
            &[("app", "web")],
        ))
        .unwrap();
        assert_eq!(p.kind, ProxyKind::Sidecar);
        assert_eq!(p.namespace, "shop");
        assert!(p.matches(&BTreeMap::from([("app".into(), "web".into())])));
        assert!(!p.matches(&BTreeMap::from([("app".into(), "db".into())])));
        let mut n = node(
            "router~10.0.0.2~gw.istio-system~istio-system.svc.cluster.local",
            "",
            &[],
        );
        n.metadata = None;
        assert_eq!(Proxy::from_node(&n).unwrap().namespace, "istio-system");
        assert!(matches!(
            Proxy::from_node(&node("bad", "x", &[])),
            Err(ProxyError::BadNodeId(_))
        ));
        assert!(matches!(
            Proxy::from_node(&node("ztunnel~a~b~c", "x", &[])),
            Err(ProxyError::BadType(_))
        ));
    }
}
