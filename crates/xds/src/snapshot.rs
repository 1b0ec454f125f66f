//! Per-node snapshots: for each type URL, a versioned set of named resources.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

/// Well-known xDS type URLs and the order in which ADS pushes them.
pub mod type_url {
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// ECDS.
    pub const EXTENSION_CONFIG: &str =
        "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

    /// Envoy's make-before-break order on one ADS stream: clusters before their endpoints,
    /// listeners before their routes, then extension configs (subscribed by listeners).
    pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, EXTENSION_CONFIG];

    /// Whether an empty subscription means "everything" (LDS and CDS) rather than "nothing".
    pub fn is_wildcard_type(type_url: &str) -> bool {
        type_url == LISTENER || type_url == CLUSTER
    }
}

/// The resources of one type for one node, with a version derived from their content.
///
/// The version is a hash of names, type URLs and bytes, so two nodes holding equal resources hold
/// equal versions, and regenerating unchanged resources produces no push.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    version: String,
    items: BTreeMap<String, Any>,
    /// Per-resource content versions (delta xDS).
    item_versions: BTreeMap<String, String>,
}

impl Resources {
    /// Builds a set from `(name, resource)` pairs; later duplicates replace earlier ones.
    pub fn new(items: impl IntoIterator<Item = (String, Any)>) -> Self {
        let items: BTreeMap<String, Any> = items.into_iter().collect();
        let mut h = DefaultHasher::new();
        let mut item_versions = BTreeMap::new();
        for (name, any) in &items {
            name.hash(&mut h);
            any.type_url.hash(&mut h);
            any.value.hash(&mut h);
            let mut ih = DefaultHasher::new();
            any.type_url.hash(&mut ih);
            any.value.hash(&mut ih);
            item_versions.insert(name.clone(), format!("{:016x}", ih.finish()));
        }
        Self {
            version: format!("{:016x}", h.finish()),
            items,
            item_versions,
        }
    }

    /// Content version of this set.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Resources by name.
    pub fn items(&self) -> &BTreeMap<String, Any> {
        &self.items
    }

    /// Content version of the resource named `name` (delta xDS).
    pub fn item_version(&self, name: &str) -> Option<&str> {
        self.item_versions.get(name).map(String::as_str)
    }

    /// The resource named `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Any> {
        self.items.get(name)
    }
}

/// Everything one node should hold: a [`Resources`] per type URL. Types missing from the
/// snapshot are not answered (the stream waits); present-but-empty types are answered empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<String, Arc<Resources>>,
}

impl Snapshot {
    /// An empty snapshot (answers nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the resources of `type_url` (builder style).
    pub fn with(mut self, type_url: &str, resources: Arc<Resources>) -> Self {
        self.types.insert(type_url.to_string(), resources);
        self
    }

    /// Sets the resources of `type_url`.
    pub fn insert(&mut self, type_url: &str, resources: Arc<Resources>) {
        self.types.insert(type_url.to_string(), resources);
    }

    /// The resources of `type_url`.
    pub fn get(&self, type_url: &str) -> Option<&Arc<Resources>> {
        self.types.get(type_url)
    }

    /// Type URLs present.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// Whether both hold the same types at the same versions (cheap: compares versions, not bytes).
    pub fn same_versions(&self, other: &Snapshot) -> bool {
        self.types.len() == other.types.len()
            && self
                .types
                .iter()
                .zip(&other.types)
                .all(|((t1, r1), (t2, r2))| {
                    t1 == t2 && (Arc::ptr_eq(r1, r2) || r1.version() == r2.version())
                })
    }

    /// The types whose version differs between `self` and `other` (present in either).
    pub fn changed_types(&self, other: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (t, r) in &self.types {
            if other.types.get(t).map(|o| o.version()) != Some(r.version()) {
                out.push(t.clone());
            }
        }
        for t in other.types.keys() {
            if !self.types.contains_key(t) {
                out.push(t.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: &[u8]) -> Any {
        Any {
            type_url: "t".into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn version_is_content_derived() {
        let a = Resources::new([("a".to_string(), any(b"1"))]);
        let b = Resources::new([("a".to_string(), any(b"1"))]);
        let c = Resources::new([("a".to_string(), any(b"2"))]);
        assert_eq!(a.version(), b.version());
        assert_ne!(a.version(), c.version());
        let s1 = Snapshot::new().with(type_url::LISTENER, Arc::new(a));
        let s2 = Snapshot::new().with(type_url::LISTENER, Arc::new(c));
        assert_eq!(s1.changed_types(&s1.clone()), Vec::<String>::new());
        assert_eq!(s1.changed_types(&s2), vec![type_url::LISTENER.to_string()]);
    }
}
